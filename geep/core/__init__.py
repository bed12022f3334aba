"""What a method is to the rest of the suite: the interface (:mod:`geep.core.interface`), the
registry (:mod:`geep.core.registry`), the checkpoint format (:mod:`geep.core.checkpoint`), the
dynamic-exit machinery the early-exit methods share (:mod:`geep.core.dynamic_exit`), sweep
settings chosen on dev (:mod:`geep.core.sweeps`) and int8 copies (:mod:`geep.core.quantize`)."""
