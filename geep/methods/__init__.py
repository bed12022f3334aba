"""GEEP, the method the suite reproduces (:mod:`geep.methods.geep`), and its exit table
(:mod:`geep.methods.exit_table`). The methods it is compared with are in ``baselines/``
(installed as ``geep.baselines``)."""
