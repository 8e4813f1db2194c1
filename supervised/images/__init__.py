"""N-way K-shot classification of any image folder: ``metaopt train images``.

* `supervised.images.layouts`: the folder layouts ``--layout`` names, and their detection;
* `supervised.images.cache`: decoding the images once into a uint8 array, cached on disk;
* `supervised.images.data`: the classes' splits, episodes gathered by index, augmentation;
* `supervised.images.family`: ``metaopt train images``;
* `supervised.images.digits`: scikit-learn's handwritten digits written as a folder
  (``python -m supervised.images make-digits DIR``).

``metaopt train omniglot`` (`supervised.omniglot`) is this family with Omniglot's folder and
defaults: the one room that another room builds on.
"""
