"""Training engine: learners (task, pretrain, adapter) built from a run config, the trainer loop
(AMP, DP-SGD, FedProx), site data loading and loaders, schedules, checkpoints and predictions."""
