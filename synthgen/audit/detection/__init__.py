"""Copy detection, bottom to top: local_features.py (keypoints) → keypoint_matching.py (matching, geometric
verification) → copydetect.py (the default detector) → detector.py (the `Detector` protocol, `get_detector`,
thresholds) → calibrate.py (`threshold: auto`) → auditor.py (`Auditor`: a fitted detector + threshold →
`Verdict`s, the object the build and `synthgen audit` both use); parallel.py (the worker threads `fit`, `check`
and calibration share) and fit_cache.py (the fitted detector and its calibration kept on disk) serve them.
"""
