"""Everything a model is, shared by serving and training: preprocessing, networks, labels, packages.

- ``preprocess``: DICOM pixels to display image to model input; ``text``: report text cleaning.
- ``encoders.image`` / ``encoders.text``: torchvision backbones; BERT-family (local directory or
  the bundled MiniLM) and seed 002's word-id MLP.
- ``fusion``, ``network``: concatenation or cross-attention fusion, the classifier, built from
  a config's ``architecture``; ``presets``: the five seed architectures by name.
- ``labels``, ``targets``: label vocabularies with their codes; dataset annotations to targets.
- ``package``: save/load/verify; ``default``: the bundled trained default and the untrained
  reference package.
- ``predictor``, ``gradcam``: batched inference, embeddings and Grad-CAM.

Nothing here imports the node or storage, and nothing here touches the network.
"""

import os

# libgomp's default wait policy spins a thread for its next parallel region. When another
# busy process shares the cores (the node's SCP and feeds, a second worker, tests beside the
# node), spinning threads starve each other: on two cores a ResNet-18 step measured 14 s
# spinning versus 0.9 s passive. It must be set before torch loads its OpenMP runtime, so it is
# set here, where every import of ours of torch begins; an explicit setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
