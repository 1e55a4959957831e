"""Stubs generated from proto/ws_sidecar/v1/sidecar.proto by gen_stubs.py (do not edit)."""
