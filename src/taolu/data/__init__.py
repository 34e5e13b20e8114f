"""Where images come from (sources), how files become pixels (decode), and how batches are made."""
