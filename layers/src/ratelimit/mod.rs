//! Per-IP rate and connection limits (work in progress).
