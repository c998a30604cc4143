//! Pre-activation ResNet-18 (He et al. 2016, as in Rice et al.'s adversarial-training code),
//! optionally as G side-by-side copies run as one grouped network.
//!
//! With `groups = 1` it is the standard network. With `groups = N` it is the fused MoCSE
//! network: the stem is a dense conv 3 -> N*w (the image is shared), every later conv is
//! grouped (groups = N), batch norm over N*C channels is per expert, and the head is a grouped
//! linear layer giving each expert `outputs` logits. Parameter names follow PyTorch's
//! state_dict of that code (`conv1.weight`, `layer1.0.bn1.weight`, ..., `linear.bias`).

use anyhow::Result;

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::ops::batchnorm::{Activation, BatchStats};
use crate::ops::conv::Conv2dParams;
use crate::ops::elementwise::lerp;
use crate::rng::{Philox, Purpose};
use crate::tensor::Tensor;

pub const BN_EPS: f32 = 1e-5;
pub const BN_MOMENTUM: f32 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetShape {
    /// Side-by-side copies run as one grouped network (the number of experts; 1 = standard).
    pub groups: usize,
    /// Base width of each copy: channels 1x, 2x, 4x, 8x of it in the four stages.
    pub width: usize,
    /// Logits per copy: the number of classes for a standard network, 2 for an expert.
    pub outputs: usize,
}

/// How a parameter starts: PyTorch's defaults (uniform in +-1/sqrt(fan_in) for convs and
/// linear layers, ones and zeros for batch norm).
#[derive(Clone, Copy, Debug)]
enum Init {
    Uniform { fan_in: usize },
    Ones,
    Zeros,
}

#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    init: Init,
}

/// The numbers that make a network: its trained parameters and its buffers (batch-norm
/// running statistics and the input normalisation).
#[derive(Clone, Debug)]
pub struct Weights {
    pub params: Vec<Tensor>,
    pub buffers: Vec<Tensor>,
}

impl Weights {
    /// The same weights on `device`.
    pub fn to_device(&self, device: Device) -> Result<Weights> {
        let move_all = |ts: &[Tensor]| ts.iter().map(|t| t.to_device(device)).collect::<Result<Vec<_>>>();
        Ok(Weights { params: move_all(&self.params)?, buffers: move_all(&self.buffers)? })
    }

    pub fn device(&self) -> Device {
        self.params.first().map_or(Device::Cpu, Tensor::device)
    }
}

struct ConvLayer {
    weight: usize,
    p: Conv2dParams,
}

struct BnLayer {
    weight: usize,
    bias: usize,
    running_mean: usize,
    running_var: usize,
}

struct Block {
    bn1: BnLayer,
    conv1: ConvLayer,
    bn2: BnLayer,
    conv2: ConvLayer,
    shortcut: Option<ConvLayer>,
}

pub struct PreActResNet {
    pub shape: NetShape,
    params: Vec<TensorSpec>,
    buffers: Vec<TensorSpec>,
    norm_mean: usize,
    norm_std: usize,
    stem: ConvLayer,
    blocks: Vec<Block>,
    bn: BnLayer,
    linear_weight: usize,
    linear_bias: usize,
}

/// Collects parameter and buffer specs while the layers are laid out.
#[derive(Default)]
struct Builder {
    params: Vec<TensorSpec>,
    buffers: Vec<TensorSpec>,
}

impl Builder {
    fn param(&mut self, name: String, shape: Vec<usize>, init: Init) -> usize {
        self.params.push(TensorSpec { name, shape, init });
        self.params.len() - 1
    }

    fn buffer(&mut self, name: String, shape: Vec<usize>, init: Init) -> usize {
        self.buffers.push(TensorSpec { name, shape, init });
        self.buffers.len() - 1
    }

    fn conv(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
    ) -> ConvLayer {
        let fan_in = cin / groups * k * k;
        ConvLayer {
            weight: self.param(
                format!("{name}.weight"),
                vec![cout, cin / groups, k, k],
                Init::Uniform { fan_in },
            ),
            p: Conv2dParams { stride, padding: k / 2, groups },
        }
    }

    fn bn(&mut self, name: &str, c: usize) -> BnLayer {
        BnLayer {
            weight: self.param(format!("{name}.weight"), vec![c], Init::Ones),
            bias: self.param(format!("{name}.bias"), vec![c], Init::Zeros),
            running_mean: self.buffer(format!("{name}.running_mean"), vec![c], Init::Zeros),
            running_var: self.buffer(format!("{name}.running_var"), vec![c], Init::Ones),
        }
    }
}

impl PreActResNet {
    pub fn new(shape: NetShape) -> PreActResNet {
        let NetShape { groups, width, outputs } = shape;
        let mut b = Builder::default();
        let norm_mean = b.buffer("normalize.mean".into(), vec![3], Init::Zeros);
        let norm_std = b.buffer("normalize.std".into(), vec![3], Init::Ones);
        let stem = b.conv("conv1", 3, groups * width, 3, 1, 1);
        let mut blocks = Vec::new();
        let mut cin = groups * width;
        for (stage, (mult, stride)) in [(1, 1), (2, 2), (4, 2), (8, 2)].into_iter().enumerate() {
            let cout = groups * width * mult;
            for i in 0..2 {
                let name = format!("layer{}.{i}", stage + 1);
                let stride = if i == 0 { stride } else { 1 };
                blocks.push(Block {
                    bn1: b.bn(&format!("{name}.bn1"), cin),
                    conv1: b.conv(&format!("{name}.conv1"), cin, cout, 3, stride, groups),
                    bn2: b.bn(&format!("{name}.bn2"), cout),
                    conv2: b.conv(&format!("{name}.conv2"), cout, cout, 3, 1, groups),
                    shortcut: (stride != 1 || cin != cout)
                        .then(|| b.conv(&format!("{name}.shortcut.0"), cin, cout, 1, stride, groups)),
                });
                cin = cout;
            }
        }
        let bn = b.bn("bn", cin);
        let fan_in = cin / groups;
        let linear_weight =
            b.param("linear.weight".into(), vec![groups * outputs, fan_in], Init::Uniform { fan_in });
        let linear_bias = b.param("linear.bias".into(), vec![groups * outputs], Init::Uniform { fan_in });
        PreActResNet {
            shape,
            params: b.params,
            buffers: b.buffers,
            norm_mean,
            norm_std,
            stem,
            blocks,
            bn,
            linear_weight,
            linear_bias,
        }
    }

    pub fn param_specs(&self) -> &[TensorSpec] {
        &self.params
    }

    pub fn buffer_specs(&self) -> &[TensorSpec] {
        &self.buffers
    }

    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|p| p.shape.iter().product::<usize>()).sum()
    }

    /// Fresh weights: parameter i is drawn from its own stream (seed, Init, i), so it does not
    /// depend on the other layers. `channel_mean`/`channel_std` set the input normalisation.
    pub fn init_weights(&self, seed: u64, channel_mean: [f32; 3], channel_std: [f32; 3]) -> Weights {
        let make = |i: usize, spec: &TensorSpec| {
            let n: usize = spec.shape.iter().product();
            let data = match spec.init {
                Init::Ones => vec![1.0; n],
                Init::Zeros => vec![0.0; n],
                Init::Uniform { fan_in } => {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    let mut rng = Philox::new(seed, Purpose::Init, i as u64);
                    (0..n).map(|_| rng.range(-bound, bound)).collect()
                }
            };
            Tensor::from_vec(&spec.shape, data)
        };
        let params = self.params.iter().enumerate().map(|(i, s)| make(i, s)).collect();
        let mut buffers: Vec<Tensor> = self.buffers.iter().enumerate().map(|(i, s)| make(i, s)).collect();
        buffers[self.norm_mean] = Tensor::from_vec(&[3], channel_mean.to_vec());
        buffers[self.norm_std] = Tensor::from_vec(&[3], channel_std.to_vec());
        Weights { params, buffers }
    }

    /// relu(batch_norm(x)) in one op (`Activation::Relu`): every batch norm here is followed
    /// by a relu.
    fn bn_relu(
        &self,
        tape: &Tape,
        p: &[Var],
        buffers: &mut [Tensor],
        bn: &BnLayer,
        x: &Var,
        train: bool,
    ) -> Result<Var> {
        let (w, b) = (&p[bn.weight], &p[bn.bias]);
        if !train {
            return tape.batch_norm_eval(
                x,
                w,
                b,
                &buffers[bn.running_mean],
                &buffers[bn.running_var],
                BN_EPS,
                Activation::Relu,
            );
        }
        let (y, stats) = tape.batch_norm_train(x, w, b, BN_EPS, Activation::Relu)?;
        Self::update_running(buffers, bn, &stats)?;
        Ok(y)
    }

    /// conv(relu(batch_norm(x))) + residual, for a batch norm whose output feeds this one
    /// convolution: one op (`Tape::bn_relu_conv2d` and `bn_relu_conv2d_eval`, which do not
    /// store the activation where the cpu's direct kernels run the convolution; in inference the
    /// cpu also adds the residual as it writes the output).
    #[allow(clippy::too_many_arguments)]
    fn bn_relu_conv(
        &self,
        tape: &Tape,
        p: &[Var],
        buffers: &mut [Tensor],
        bn: &BnLayer,
        x: &Var,
        conv: &ConvLayer,
        residual: Option<&Var>,
        train: bool,
    ) -> Result<Var> {
        let (w, b) = (&p[bn.weight], &p[bn.bias]);
        if !train {
            let (mean, var) = (&buffers[bn.running_mean], &buffers[bn.running_var]);
            return tape.bn_relu_conv2d_eval(x, w, b, mean, var, BN_EPS, &p[conv.weight], conv.p, residual);
        }
        let (y, stats) = tape.bn_relu_conv2d(x, w, b, BN_EPS, &p[conv.weight], conv.p, residual)?;
        Self::update_running(buffers, bn, &stats)?;
        Ok(y)
    }

    /// The running statistics moved towards a training batch's.
    fn update_running(buffers: &mut [Tensor], bn: &BnLayer, stats: &BatchStats) -> Result<()> {
        buffers[bn.running_mean] = lerp(&buffers[bn.running_mean], &stats.mean, BN_MOMENTUM)?;
        buffers[bn.running_var] = lerp(&buffers[bn.running_var], &stats.var_unbiased, BN_MOMENTUM)?;
        Ok(())
    }

    /// Images [B, 32, 32, 3] in [0, 1] to logits [B, groups * outputs]. `params` are the tape
    /// variables of `Weights::params` in order; in training mode batch norm uses batch
    /// statistics and updates the running statistics in `buffers`.
    pub fn forward(
        &self,
        tape: &Tape,
        params: &[Var],
        buffers: &mut [Tensor],
        images: &Var,
        train: bool,
    ) -> Result<Var> {
        let x = self.normalize(tape, buffers, images)?;
        self.forward_normalized(tape, params, buffers, &x, train)
    }

    /// The input normalisation, (images - mean) / std with the statistics stored as buffers.
    pub fn normalize(&self, tape: &Tape, buffers: &[Tensor], images: &Var) -> Result<Var> {
        tape.normalize(images, &buffers[self.norm_mean], &buffers[self.norm_std])
    }

    /// `forward` from normalised images (`normalize`).
    pub fn forward_normalized(
        &self,
        tape: &Tape,
        params: &[Var],
        buffers: &mut [Tensor],
        x: &Var,
        train: bool,
    ) -> Result<Var> {
        let p = params;
        // In training, a convolution whose output feeds a batch norm sums it per channel as it
        // writes it, for that batch norm's statistics (`bn_relu_conv2d`'s always do).
        let conv_to_bn = |x: &Var, layer: &ConvLayer| match train {
            true => tape.conv2d_for_batch_norm(x, &p[layer.weight], layer.p),
            false => tape.conv2d(x, &p[layer.weight], layer.p),
        };
        let mut out = conv_to_bn(x, &self.stem)?;
        for block in &self.blocks {
            let (h, shortcut) = match &block.shortcut {
                // relu(bn1(out)) feeds two convolutions here, so it is stored once.
                Some(sc) => {
                    let pre = self.bn_relu(tape, p, buffers, &block.bn1, &out, train)?;
                    let shortcut = tape.conv2d(&pre, &p[sc.weight], sc.p)?;
                    (conv_to_bn(&pre, &block.conv1)?, shortcut)
                }
                None => {
                    (self.bn_relu_conv(tape, p, buffers, &block.bn1, &out, &block.conv1, None, train)?, out)
                }
            };
            out =
                self.bn_relu_conv(tape, p, buffers, &block.bn2, &h, &block.conv2, Some(&shortcut), train)?;
        }
        let out = self.bn_relu(tape, p, buffers, &self.bn, &out, train)?;
        let pooled = tape.global_avg_pool(&out)?;
        tape.grouped_linear(&pooled, &p[self.linear_weight], &p[self.linear_bias], self.shape.groups)
    }

    /// Every convolution in execution order, with the spatial size of its input.
    pub fn conv_layers(&self) -> Vec<ConvSpec> {
        let spec = |layer: &ConvLayer, input_size: usize| ConvSpec {
            name: self.params[layer.weight].name.trim_end_matches(".weight").to_string(),
            weight_shape: self.params[layer.weight].shape.clone(),
            params: layer.p,
            input_size,
        };
        let mut out = vec![spec(&self.stem, 32)];
        let mut size = 32;
        for block in &self.blocks {
            let after = size / block.conv1.p.stride;
            out.push(spec(&block.conv1, size));
            out.push(spec(&block.conv2, after));
            if let Some(sc) = &block.shortcut {
                out.push(spec(sc, size));
            }
            size = after;
        }
        out
    }

    /// Forward FLOPs per image of the convolutions and the head.
    pub fn flops_per_image(&self) -> f64 {
        let convs: f64 = self
            .conv_layers()
            .iter()
            .map(|c| {
                let out_size = c.input_size / c.params.stride;
                let w = &c.weight_shape;
                2.0 * (out_size * out_size * w.iter().product::<usize>()) as f64
            })
            .sum();
        let head = &self.params[self.linear_weight].shape;
        convs + 2.0 * (head[0] * head[1]) as f64
    }
}

/// One convolution of a network, for benchmarks: weight [O, I/g, K, K] on a square input.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvSpec {
    pub name: String,
    pub weight_shape: Vec<usize>,
    pub params: Conv2dParams,
    pub input_size: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_network_has_preact18_size() {
        let net = PreActResNet::new(NetShape { groups: 1, width: 64, outputs: 10 });
        // 11,171,146 of the common CIFAR PreAct-18 plus 1,024 of the final batch norm.
        assert_eq!(net.num_parameters(), 11_172_170);
        let gflop = net.flops_per_image() / 1e9;
        assert!((gflop - 1.11).abs() < 0.01, "{gflop}");
    }

    #[test]
    fn fused_experts_cost_n_times_w_squared() {
        let fused = PreActResNet::new(NetShape { groups: 10, width: 16, outputs: 2 });
        let single = PreActResNet::new(NetShape { groups: 1, width: 16, outputs: 2 });
        assert_eq!(fused.num_parameters(), 10 * single.num_parameters());
        assert_eq!(fused.param_specs().len(), single.param_specs().len());
    }
}
