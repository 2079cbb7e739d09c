"""Datasets for membership-inference experiments, and the membership designs.

``load(name, data_dir=None)`` returns a :class:`Dataset` of numpy arrays:
images are float32 NHWC ``[N, H, W, C]``, tabular data float32 ``[N, features]``,
labels int32 ``[N]``.

=================  ==========================================================
name               source
=================  ==========================================================
``digits``         scikit-learn's bundled ``load_digits`` (offline, the default):
                   1,797 8x8 images scaled to [0, 1], ``[N, 8, 8, 1]``; a fixed
                   stratified split (seed 0) into 1,297 train / 500 test.
``fashion_mnist``  the four IDX files (``train-images-idx3-ubyte.gz``,
                   ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
                   ``t10k-labels-idx1-ubyte.gz``; gzipped or not) searched in
                   ``data_dir``, then in ``/usr/share/datasets/fashion-mnist``
                   (Debian/Ubuntu: ``apt-get install dataset-fashion-mnist``),
                   then TFDS as below. 60,000 / 10,000 images ``[N, 28, 28, 1]``.
``mnist``,         ``tfds.data_source(name, data_dir=data_dir)``: reads data
``cifar10``,       already prepared in ArrayRecord format; TensorFlow is not
``cifar100``       imported. Preparing it needs TensorFlow and internet, so do it
                   elsewhere and copy the directory:
                   ``pip install tensorflow tensorflow-datasets &&
                   tfds build cifar10 --file_format=array_record --data_dir=DIR``.
``purchase100``,   ``<data_dir>/<name>.npz`` with arrays ``x`` float32
``texas100``,      ``[N, features]`` and ``y`` int ``[N]`` (labels 0..C-1), and
``location30``     optionally ``x_test``, ``y_test``; without them a fixed
                   stratified split (seed 0) holds out ``N // 5`` examples.
=================  ==========================================================

All image sets except ``digits`` are scaled to [-1, 1] (``u8 / 127.5 - 1``).

Converting the commonly distributed tabular files (labels there are 1-based;
the loader rejects labels outside 0..C-1, so a forgotten ``-1`` is caught)::

    # Purchase100 (Shokri et al.): CSV, label first, 600 binary features
    python -c "import numpy as np; d=np.loadtxt('dataset_purchase', delimiter=','); np.savez('purchase100.npz', x=d[:,1:].astype('float32'), y=d[:,0].astype(int)-1)"
    # Texas100: features and labels in two files
    python -c "import numpy as np; x=np.loadtxt('texas/100/feats', delimiter=','); y=np.loadtxt('texas/100/labels'); np.savez('texas100.npz', x=x.astype('float32'), y=y.astype(int)-1)"
    # Location30 ('bangkok'): CSV, label first, 446 binary features
    python -c "import numpy as np; d=np.loadtxt('bangkok', delimiter=','); np.savez('location30.npz', x=d[:,1:].astype('float32'), y=d[:,0].astype(int)-1)"

Modules: :mod:`.loaders` (``load`` and where each dataset comes from),
:mod:`.formats` (the IDX and npz readers), :mod:`.dataset` (the
:class:`Dataset` container and :func:`subset`); the membership designs are
:mod:`miajax.designs`.
"""

from miajax.data.dataset import Dataset, subset
from miajax.data.formats import read_idx
from miajax.data.loaders import DATASETS, DEBIAN_FASHION_MNIST_DIR, load
from miajax.designs import SPLIT_NAMES, disjoint_split, lira_keep, paired_keep

__all__ = [
  "Dataset",
  "load",
  "subset",
  "read_idx",
  "DATASETS",
  "DEBIAN_FASHION_MNIST_DIR",
  "lira_keep",
  "paired_keep",
  "disjoint_split",
  "SPLIT_NAMES",
]
