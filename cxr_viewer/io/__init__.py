"""Images in: study indexing (``index``, ``study``), DICOM (``dicom``) and raster (``raster``)
decoding, the display pipeline (``display``: Modality LUT, VOI, MONOCHROME1), decoded images
(``image``) and thumbnails (``thumbnails``).

May import: ``common``. Never Qt, never torch.
"""
