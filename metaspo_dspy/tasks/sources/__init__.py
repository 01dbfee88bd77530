"""Where task data comes from, checked row by row: local files in the reference layout, Hugging Face datasets, the
``bigbench`` package, and the originals that ``metaspo data fetch`` downloads and converts."""
