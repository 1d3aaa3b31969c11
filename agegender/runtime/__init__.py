"""The classifier runtime: one interface (:class:`~agegender.runtime.base.Classifier`) over
the PyTorch and onnxruntime classifiers, backend resolution in one place, and building a
classifier for a checkpoint (:func:`~agegender.runtime.build.build_classifier`).

Import the submodules: ``agegender.runtime.torch_classifier`` imports torch, which runs on
onnxruntime never do.
"""
