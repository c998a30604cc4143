//! Layers and models: the PreAct ResNet-18 (standard or grouped) and the MoCSE model built on it.

pub mod expert_slices;
pub mod model;
pub mod preact_resnet;
