"""What a run leaves behind and shows while it runs: TensorBoard, metrics.csv, summary.json,
the progress bar."""
