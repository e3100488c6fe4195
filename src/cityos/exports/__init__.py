"""Streamed exports of public datasets (docs/open-data.md): CSV, GeoJSON and Parquet files of
entities and history, written page by page so memory stays flat whatever the size."""
