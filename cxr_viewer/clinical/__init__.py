"""Clinical integration: PACS query/retrieve/send (``pacs``, nodes in ``pacs_config``), DICOM
results (``dicom_results``: Comprehensive SR, Secondary Capture), the PDF report's content
(``report``; Qt's PDF writer is in ``gui.pdf_report``), exports (``export``) and
de-identification (``deid``).

May import: ``ai``, ``io``, ``common``. Not ``training``, never Qt.
"""
