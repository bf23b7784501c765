"""Everything a model is, shared by serving and training: preprocessing, networks, labels, packages.

- ``preprocess``: DICOM pixels to display image to model input; ``text``: report text cleaning.
- ``encoders.image`` / ``encoders.text``: torchvision backbones; BERT-family (local directory or
  the bundled MiniLM) and seed 002's word-id MLP.
- ``fusion``, ``network``: concatenation or cross-attention fusion, the classifier, built from
  a config's ``architecture``; ``presets``: the five seed architectures by name.
- ``labels``, ``targets``: label vocabularies with their codes; dataset annotations to targets.
- ``package``: save/load/verify; ``default``: the untrained reference package.
- ``predictor``, ``gradcam``: batched inference, embeddings and Grad-CAM.

Nothing here imports the node or storage, and nothing here touches the network.
"""
