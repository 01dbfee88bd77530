"""SPRIG: the teleprompter, its edit-based genetic search loop, its edits and its component library."""
