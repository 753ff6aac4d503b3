# The CPU benchmark's poodle (configs/bench/tiny.py): its r10n demo config on world v3
# (pretrain/data/world_v3.py: large shapes, class = shape + a part family, colour says nothing).
_base_ = ["./poodle_r10n_synthetic_demo.py"]

data = dict(world="v3")
