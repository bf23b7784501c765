"""The node's DICOM edges: the storage SCP that receives studies, the SCU that sends results."""
