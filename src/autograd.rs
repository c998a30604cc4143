//! A minimal reverse-mode autograd tape.
//!
//! Every op that has an input requiring a gradient appends one node: the ids of those inputs
//! and a closure that maps the output's gradient to the inputs' gradients. The closure owns
//! exactly the tensors its backward needs, so a tape holds nothing else. `backward` walks the
//! nodes in reverse, runs each closure once and drops it and the output gradient right after,
//! so memory is released as it goes. With gradients disabled (evaluation) nothing is recorded
//! and intermediates die as soon as the forward pass stops referring to them.

use std::cell::RefCell;
use std::collections::HashMap;

use anyhow::{Result, bail};

use crate::ops::batchnorm::ChannelSums;
use crate::tensor::Tensor;

/// Maps the output gradient to one gradient per input; `needs[i]` says whether input i wants one.
pub type BackwardFn = Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>>>;

enum Node {
    Leaf,
    Op {
        /// For every input: its node id when it requires a gradient.
        inputs: Vec<Option<usize>>,
        backward: BackwardFn,
    },
}

/// A value in the computation: its tensor and, when a gradient flows to it, its node id.
#[derive(Clone)]
pub struct Var {
    value: Tensor,
    id: Option<usize>,
}

impl Var {
    /// A value that no gradient flows to.
    pub fn constant(value: Tensor) -> Var {
        Var { value, id: None }
    }

    pub fn value(&self) -> &Tensor {
        &self.value
    }

    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    pub fn requires_grad(&self) -> bool {
        self.id.is_some()
    }

    /// The tensor, and a Var for the same node holding no data: for an op that writes its
    /// result over its input's buffer and records the input as usual.
    pub(crate) fn split_value(self) -> (Tensor, Var) {
        let id = self.id;
        (self.value, Var { value: Tensor::from_vec(&[0], Vec::new()), id })
    }
}

pub struct Tape {
    grad_enabled: bool,
    nodes: RefCell<Vec<Node>>,
    /// Per-channel sums of recorded values, by node id, taken by the convolutions that wrote
    /// them, for the batch norm that reads them (`Tape::train_statistics`).
    channel_sums: RefCell<HashMap<usize, ChannelSums>>,
}

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

impl Tape {
    /// A tape that records ops for a backward pass.
    pub fn new() -> Tape {
        Tape { grad_enabled: true, nodes: RefCell::default(), channel_sums: RefCell::default() }
    }

    /// A tape that records nothing: evaluation without gradients.
    pub fn no_grad() -> Tape {
        Tape { grad_enabled: false, nodes: RefCell::default(), channel_sums: RefCell::default() }
    }

    /// Nodes currently held: what a backward pass would still have to run.
    pub fn recorded(&self) -> usize {
        self.nodes.borrow().len()
    }

    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    /// An input of the computation (a weight, or an image batch when attacking it).
    pub fn leaf(&self, value: Tensor, requires_grad: bool) -> Var {
        if !(requires_grad && self.grad_enabled) {
            return Var::constant(value);
        }
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node::Leaf);
        Var { value, id: Some(nodes.len() - 1) }
    }

    /// Whether an op over these inputs must record a backward closure.
    pub fn needs_grad(&self, inputs: &[&Var]) -> bool {
        self.grad_enabled && inputs.iter().any(|v| v.requires_grad())
    }

    /// Records the result of an op. `backward` is only kept when some input requires a gradient;
    /// ops check `needs_grad` first so that they save nothing for a backward that never runs.
    pub fn record(&self, value: Tensor, inputs: &[&Var], backward: BackwardFn) -> Var {
        if !self.needs_grad(inputs) {
            return Var::constant(value);
        }
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node::Op { inputs: inputs.iter().map(|v| v.id).collect(), backward });
        Var { value, id: Some(nodes.len() - 1) }
    }

    /// Keeps the per-channel sums of `y`'s value, which the op that made it took as it wrote it
    /// (nothing is kept for a value that is not recorded).
    pub(crate) fn offer_channel_sums(&self, y: &Var, sums: ChannelSums) {
        if let Some(id) = y.id {
            self.channel_sums.borrow_mut().insert(id, sums);
        }
    }

    /// The per-channel sums of `x`'s value, where the op that made it offered them.
    pub(crate) fn take_channel_sums(&self, x: &Var) -> Option<ChannelSums> {
        self.channel_sums.borrow_mut().remove(&x.id?)
    }

    /// Runs backward from a scalar and returns the gradients of the leaves that required one.
    /// The tape is consumed: its nodes are freed one by one as the pass goes.
    pub fn backward(&self, loss: &Var) -> Result<Gradients> {
        if loss.value.len() != 1 {
            bail!("backward needs a scalar loss, got shape {:?}", loss.shape());
        }
        self.backward_from(loss, Tensor::full(loss.shape(), 1.0).to_device(loss.value.device())?)
    }

    /// Runs backward from any value, given the gradient of some scalar with respect to it.
    pub fn backward_from(&self, output: &Var, output_grad: Tensor) -> Result<Gradients> {
        let Some(loss_id) = output.id else {
            bail!("backward from a value that does not depend on anything requiring a gradient");
        };
        if output_grad.shape() != output.shape() {
            bail!(
                "backward: gradient of shape {:?} for a value of shape {:?}",
                output_grad.shape(),
                output.shape()
            );
        }
        let mut nodes = std::mem::take(&mut *self.nodes.borrow_mut());
        // Nodes recorded after the loss cannot contribute to it.
        nodes.truncate(loss_id + 1);
        let mut grads: Vec<Option<Tensor>> = vec![None; nodes.len()];
        grads[loss_id] = Some(output_grad);
        let mut leaves = HashMap::new();
        while let Some(node) = nodes.pop() {
            let id = nodes.len();
            let Some(grad) = grads[id].take() else {
                continue;
            };
            match node {
                Node::Leaf => {
                    leaves.insert(id, grad);
                }
                Node::Op { inputs, backward } => {
                    let needs: Vec<bool> = inputs.iter().map(Option::is_some).collect();
                    let input_grads = backward(&grad, &needs)?;
                    for (input, g) in inputs.iter().zip(input_grads) {
                        if let (Some(input), Some(g)) = (input, g) {
                            grads[*input] = Some(match grads[*input].take() {
                                None => g,
                                Some(acc) => crate::ops::elementwise::sum_owned(acc, g)?,
                            });
                        }
                    }
                }
            }
        }
        Ok(Gradients { leaves })
    }
}

/// Gradients of the leaves after a backward pass.
pub struct Gradients {
    leaves: HashMap<usize, Tensor>,
}

impl Gradients {
    /// The gradient of a leaf; `None` when it did not require one or the loss does not depend on it.
    pub fn get(&self, var: &Var) -> Option<&Tensor> {
        var.id.and_then(|id| self.leaves.get(&id))
    }

    pub fn take(&mut self, var: &Var) -> Option<Tensor> {
        var.id.and_then(|id| self.leaves.remove(&id))
    }
}
