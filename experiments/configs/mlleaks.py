"""experiments/mlleaks.py: ML-Leaks' adversaries against a digits target, Fashion-MNIST the other
dataset."""


def get_config() -> dict:
  return dict(
    dataset="digits",
    data_dir=None,
    adv2_dataset="fashion_mnist",
    adv2_data_dir=None,
    reverse=True,
    block_size=None,  # a quarter of --dataset's training set
    adv2_block_size=2500,
    model="mlp",
    model_kwargs=dict(widths=(256, 128), activation="relu"),
    optimizer="sgd",
    momentum=0.9,
    weight_decay=0.0,  # ML-Leaks: L2 1e-7, in effect none
    schedule="cosine",
    # Epochs, batch size and learning rate per dataset, for the target and the shadow alike.
    # ML-Leaks attacks models trained to fit their data (50 epochs, no real regularisation): the
    # common 15-epoch Fashion-MNIST recipe stops at about 0.91 training accuracy, 30 epochs reach
    # about 0.98.
    datasets=dict(
      digits=dict(epochs=30, batch_size=64, learning_rate=0.1),
      fashion_mnist=dict(epochs=30, batch_size=256, learning_rate=0.1),
    ),
    other_datasets=dict(epochs=30, batch_size=128, learning_rate=0.1),
    top_k=1,  # the strongest masking that keeps the predicted label
    attack_model="mlp",  # the paper's; the released code's is logreg
    # Adversary 3's threshold: this percentile of the top posterior on num_random uniform inputs.
    random_percentile=90.0,
    num_random=1000,
    seed=0,
  )
