"""Everything CNN for cxr-triage (preprocessing, architectures, training, Grad-CAM).

TensorFlow is imported lazily inside the functions that need it, so importing this package is
cheap and the DICOM listener process never loads TensorFlow.
"""
