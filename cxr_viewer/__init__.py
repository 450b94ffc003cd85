"""cxr_viewer: a desktop chest X-ray viewer with research-use AI scoring.

The package tree is the architecture; arrows only point down (``tests/test_layering.py``):

    gui, cli          the Qt layer and the command line: use everything below
    clinical          PACS, DICOM SR / Secondary Capture, PDF content, de-identification
    training          datasets, the training engine, metrics, evaluation, experiments, head fitting
    ai                the network, the one preprocessing function, model files, scoring, heatmaps
    io                indexing, DICOM and raster decoding, the display pipeline, studies, thumbnails
    common            plain helpers every part uses: tasks and progress, errors, atomic files

``clinical`` and ``training`` use ``ai`` and ``io`` but not each other. Nothing below ``gui``
imports Qt. Research use only. Not for diagnostic use.
"""

__version__ = "0.1.0"

RESEARCH_NOTICE = "Research use only. Not for diagnostic use."
