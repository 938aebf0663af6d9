"""Data platform: synthetic P2Med-MD, DICOM decoding, de-identification, ingest, loaders."""
