"""experiments/shokri.py: Shokri et al.'s shadow-model attack on digits, at four training-set sizes."""

from configs import recipes


def get_config() -> dict:
  return dict(
    **recipes.training("digits"),
    # Training-set sizes n: the common CIFAR-10 reproduction's 2,500 / 5,000 / 10,000 / 15,000 of
    # 60,000 images as fractions of the pool (--sizes gives them as numbers instead).
    sizes=None,
    pool_fractions=(1 / 24, 1 / 12, 1 / 6, 1 / 4),
    num_shadows=10,
    attack_model="mlp",
    per_class=True,
  )
