"""The thin Qt layer: widgets, dialogs and workers running core tasks off the GUI thread."""
