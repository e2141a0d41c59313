"""Reading what users bring: model files (:mod:`.load`, :mod:`.exported`, :mod:`.onnx_model`), data sets
(:mod:`.data`) and VNN-LIB properties (:mod:`.vnnlib`)."""
