"""The paper's recipe: AlexNet on ILSVRC-2012 (Krizhevsky et al., 2012).

Run:
  python -m alexnet_jax.prepare --source=/data/imagenet --output=/data/imagenet_prepared
  python launch.py --config=configs/imagenet.py --workdir=runs/imagenet \
      --config.data.dir=/data/imagenet_prepared

Smaller configs (configs/digits.py, tests) start from `get_config()` and override fields.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  """Every field of a run with its one-line comment: one function, since it is the schema
  (known_fields, --print_config) and reads best as a single list."""
  config = ml_collections.ConfigDict()

  config.seed = 0  # Seeds parameter init, dropout and the data order.
  config.batch_size = 128  # Global batch (all devices, all hosts), images per step.
  config.num_epochs = 90  # Passes over the training split.
  config.num_train_steps = -1  # -1: derive from num_epochs and the train split size.
  config.eval_every_epochs = 1  # Validation after every this many epochs.
  config.final_eval_crops = 10  # View count of the last evaluation: 10 = the paper's test.
  # Evaluations: (metrics prefix, kind, split, 'every' | 'final'); see evaluation/evaluators.py.
  config.evals = (('val', 'center_crop', 'val', 'every'), ('val10', 'ten_crop', 'val', 'final'))
  # Fine-tuning: 'WORKDIR[:STEP]' starts a new run from the parameters of another run's
  # checkpoint (STEP: a number, 'newest' (default) or 'best'); fc8 starts fresh where the
  # class counts differ. '': none. Ignored when the workdir resumes from its own checkpoints.
  config.init_from = ''

  # Device mesh: the paper's two-GPU split is `model=2`; `-1` takes the remaining devices.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # Data-parallel axis size; -1: devices / model.
  # Model-parallel axis size: 2 = one tower per device, 1 = none; 'auto': 2 on an even
  # device count, else 1 (the log and --dry_run say which). Typed `object` so that the
  # field takes both 'auto' and a number (--config.mesh.model=2).
  config.mesh.model = config_dict.FieldReference('auto', field_type=object)
  # Logical axis name of a weight or activation -> mesh axis (None: replicated).
  config.mesh.rules = (
      ('batch', 'data'),
      ('conv_out', 'model'),
      ('fc_out', 'model'),
      ('classes', 'model'),  # fc8's outputs; kept whole where num_classes does not divide
      ('conv_in', None),
      ('conv_h', None),
      ('conv_w', None),
      ('fc_in', None),
  )

  config.model = ml_collections.ConfigDict()
  config.model.num_classes = 1000  # Output classes (fc8 width).
  config.model.towers = 2  # 2: grouped conv2/conv4/conv5 as in the paper; 1: one tower.
  config.model.use_lrn = True  # Local response normalisation after conv1 and conv2.
  config.model.dropout_rate = 0.5  # Dropout before fc7 and fc8 (after fc6 and fc7).
  config.model.conv1_padding = 2  # 2 for 224 crops; 0 for 227 crops (Caffe).
  config.model.width = 1.0  # Multiplier on every conv and hidden fc width.
  config.model.dtype = 'auto'  # Compute dtype: 'auto' (bfloat16 on GPU/TPU, float32 on CPU),
  #                               'float32' or 'bfloat16'; params stay float32.
  config.model.init_scheme = 'paper'  # 'paper' | 'caffe' | 'he' (see model.layer_init).
  config.model.input_scale = 1.0  # Input multiplier: 1.0 = raw 0-255 pixels minus mean (paper).
  config.model.group_impl = 'split'  # Grouped convs: 'split' (per-tower convs) | 'feature_group'.
  config.model.pool_size = 3  # Max-pool window z: 3 with stride 2 overlaps (section 3.4).
  config.model.pool_stride = 2  # Max-pool stride s; s=z=2 is the paper's non-overlapping control.
  # conv1-conv5 widths at width 1.0, a tuple (--config.model.conv_widths='(48,128,192,192,128)');
  # None: the paper. A typed placeholder, so that the command line can set it.
  config.model.conv_widths = config_dict.placeholder(tuple)
  config.model.lrn_k = 2.0  # LRN constant k: the paper's 2; imported Caffe weights use 1.
  # LRN alpha in the paper's form, not divided by the window of 5 as Caffe's and PyTorch's
  # alpha is: the paper's 1e-4; imported Caffe weights (alpha 1e-4 there) use 2e-5.
  config.model.lrn_alpha = 1e-4
  # Per-channel (R, G, B) divisor of the input after input_scale, 0-255 units, a tuple; None:
  # none (the paper). Imported torchvision weights: 255 x (0.229, 0.224, 0.225).
  config.model.input_std = config_dict.placeholder(tuple)

  config.data = ml_collections.ConfigDict()
  config.data.source = 'prepared'  # 'prepared' (alexnet_jax.prepare output) | 'tfds'.
  config.data.dir = ''  # Prepared dataset folder (or tfds data_dir for source='tfds').
  config.data.prepare_from = ''  # If set and `dir` holds no dataset: prepare it from this source.
  config.data.storage = 'jpeg'  # What prepare_from writes: 'jpeg' shards | 'raw' pixels (no
  #   decoding: ~7x the disk, a few threads feed a GPU). A complete dataset in `dir` is read
  #   in the storage it has (docs/design.md, "Raw storage").
  config.data.image_size = 256  # Side of the stored square images, pixels.
  config.data.crop_size = 224  # Train/eval crop side, pixels (227 with conv1_padding=0).
  config.data.random_crop = True  # Random crops in training; False: the central crop.
  config.data.flip = True  # Random horizontal flips in training.
  config.data.lighting_std = 0.1  # Std of the PCA lighting alphas; 0 turns lighting off.
  config.data.mean = 'pixel'  # Subtract the per-pixel mean image ('pixel') or per channel.
  config.data.num_threads = -1  # Reader/decoder threads per host (per worker process, if
  #                               any); -1: one per CPU core, or one per worker process.
  config.data.worker_count = -1  # grain worker processes per host; 0: threads only; -1: one per
  #   core where Amdahl's projection of the threads (the per-record Python holds the GIL)
  #   falls short of the step's images/s, else 0: processes on GPU/TPU (6x the images/s of
  #   threads on an H200 host), threads on CPU (docs/design.md, "Input pipeline on a GPU host").
  config.data.prefetch = 2  # Batches prepared ahead of the train step.
  config.data.device_prefetch = 2  # Batches copied to the devices ahead of the step, by a
  #                                  thread; 0: copied by the main thread at each step.

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 0.01  # Initial learning rate.
  config.optim.momentum = 0.9  # Momentum of the paper's update rule.
  config.optim.weight_decay = 5e-4  # Weight decay, applied as in the paper (scaled by lr).
  config.optim.decay_bias = True  # Decay biases too (paper: yes; Caffe: no).
  config.optim.schedule = 'plateau'  # 'plateau' | 'step' | 'constant'.
  config.optim.plateau_patience = 2  # Evaluations without improvement before a drop.
  config.optim.plateau_factor = 0.1  # Multiplier of each drop.
  config.optim.plateau_max_drops = 3  # The paper divided the rate by 10 three times.
  config.optim.step_epochs = (30, 60, 80)  # 'step' schedule: epochs at which lr drops.
  config.optim.step_factor = 0.1  # 'step' schedule: multiplier at each of step_epochs.

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 2000  # Also saved at each epoch end and on SIGTERM.
  config.checkpoint.keep = 3  # Most recent checkpoints kept (plus the best one).
  config.checkpoint.keep_best = True  # Also keep the checkpoint with the lowest val top-1 error.
  config.checkpoint.start_fresh_if_unusable = False  # All checkpoints unreadable: start over or stop.

  config.log = ml_collections.ConfigDict()
  config.log.every_steps = 100  # Train metrics (loss, error, lr, images/s) every this many steps.
  config.log.tensorboard = True  # Write TensorBoard event files in the workdir.
  config.log.progress = True  # Progress bar when the console is interactive.
  config.log.profile_steps = ()  # (start, stop): profile steps start..stop-1 into WORKDIR/profile.
  # Weights & Biases (pip install wandb): metrics.jsonl, the config and the run record
  # mirrored to one W&B run per workdir, resumed with it. TensorBoard stays on beside it.
  config.log.wandb = ml_collections.ConfigDict()
  config.log.wandb.project = ''  # W&B project; '': W&B off (wandb is not even imported).
  config.log.wandb.entity = ''  # W&B user or team; '': your default entity.
  config.log.wandb.name = ''  # Run name shown in W&B; '': the workdir's folder name.
  config.log.wandb.mode = ''  # 'online' | 'offline' (upload later: wandb sync) | 'disabled';
  #                             '': the WANDB_MODE environment variable, else online.

  return config
