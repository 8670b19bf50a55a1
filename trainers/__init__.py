"""absl-flag front ends (train, measure, compare) over the deformstab_tf library."""
