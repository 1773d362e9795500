"""Step ``exits``: early exit that survives deployment.

- :mod:`.model`: exit heads on a trained encoder (torch), and the segment modules exported
  one ONNX graph each;
- :mod:`.train`: training the heads by self-distillation from the model's own last layer;
- :mod:`.policies`: exit policies (numpy, shared by calibration and the deployed controller,
  so both take the same decisions);
- :mod:`.calibrate`: sweep each policy, expected latency from measured segment timings,
  choose an operating point under a budget;
- :mod:`.segments`: export/compile the segments and the static depth cut;
- :mod:`.controller`: the deploy-side runner that lets each sample leave on its own.
"""
