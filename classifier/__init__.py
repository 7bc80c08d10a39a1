"""SKU recognition on crops: model directories, datasets, backbones, export, runtime backends.

Modules:

- :mod:`classifier.types`: :class:`~classifier.types.Classifications`, the result for N crops
  (``class_id``, ``sku_code``, ``confidence``, L2-normalised ``embedding``).
- :mod:`classifier.model_dir`: the model directory format (weights, ``labels.json`` = SKU codes,
  ``preprocess.json``, ``architecture.json``, metrics, provenance); no runtime needed.
- :mod:`classifier.preprocess`: crops -> normalised NCHW batch, in numpy/OpenCV (shared by all backends).
- :mod:`classifier.dataset`: labelled images from the Grocery Store dataset, an image folder or
  a list file; broken images are reported, not fatal.
- :mod:`classifier.backbones`: torchvision backbones with an embedding and classifier head;
  local weights only (extra ``train``).
- :mod:`classifier.export`: ONNX (dynamic or fixed batch) and OpenVINO IR export (extra ``train``).
- :mod:`classifier.train`: train a classifier on labelled crops and write its model directory
  (augmentation, AdamW + cosine, early stopping, prototypes, open-set calibration; extra ``train``).
- :mod:`classifier.openset`: class prototypes, the open-set score and threshold, AUROC.
- :mod:`classifier.gallery`: few-shot enrollment, a versioned gallery of SKU prototypes.
- :mod:`classifier.recognize`: a backend + prototypes + gallery + threshold -> classifications
  with unknown crops and enrolled SKUs.
- :mod:`classifier.backends`: ``load(model_dir, backend="onnx" | "openvino" | "torch")`` and
  ``classify(crops)``; each runtime is imported only when its backend is loaded.

Knows nothing of databases, queues or the detector (enforced by import-linter, see ``pyproject.toml``).
"""
