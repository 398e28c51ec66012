"""Copy detection, bottom to top: local_features.py → copydetect.py (the default detector) → detector.py (the
`Detector` protocol, `get_detector`, thresholds) → calibrate.py (`threshold: auto`) → auditor.py (`Auditor`:
a fitted detector + threshold → `Verdict`s, the object the build and `synthgen audit` both use).
"""
