# Runtime defaults every pretrain config inherits.
seed = 0
deterministic = False
device = "auto"        # "cpu" forces CPU even when a GPU is present
amp = "auto"           # bf16 autocast on GPU, off on CPU
sync_bn = False
accum_steps = 1        # with global_batch set, leave at 1: accumulation is derived from the GPU count
num_workers = "auto"   # all cores of this node shared among its GPUs, minus one each (README 'Data pipeline')
log_interval = 10
keep_checkpoints = 3
lr_schedule = dict(warmup_iters=0, min_lr_factor=0.0)
