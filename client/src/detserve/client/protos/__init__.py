"""Minimal, wire-compatible copies of the TensorFlow Serving protos the client needs.

Generated from the ``.proto`` files beside this module by ``client/tools/regen_protos.py`` (protoc from
grpcio-tools) and registered in a private descriptor pool (see ``_pool``). Package names, message
names and field numbers are TensorFlow's and TF Serving's, so messages serialised here parse with
``tensorflow_serving.apis`` and the other way round.
"""
