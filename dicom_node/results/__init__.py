"""Pure builders for the result objects: Grad-CAM Secondary Capture and TID 1500 SR.

Datasets in, datasets out: nothing here touches the network, the database or the model.
"""
