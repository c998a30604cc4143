//! Global average pooling: [B, H, W, C] -> [B, C].

use anyhow::{Result, ensure};

use crate::autograd::{Tape, Var};
use crate::tensor::Tensor;

impl Tape {
    pub fn global_avg_pool(&self, x: &Var) -> Result<Var> {
        let s = x.shape().to_vec();
        ensure!(s.len() == 4, "global average pool needs [B, H, W, C], got {s:?}");
        let (b, hw, c) = (s[0], s[1] * s[2], s[3]);
        let xs = x.value().as_slice();
        let mut y = vec![0.0f32; b * c];
        for (n, out) in y.chunks_exact_mut(c).enumerate() {
            for p in 0..hw {
                for (o, v) in out.iter_mut().zip(&xs[(n * hw + p) * c..][..c]) {
                    *o += v;
                }
            }
            out.iter_mut().for_each(|o| *o /= hw as f32);
        }
        Ok(self.record(
            Tensor::from_vec(&[b, c], y),
            &[x],
            Box::new(move |g, _| {
                let g = g.as_slice();
                let mut dx = vec![0.0f32; b * hw * c];
                for (i, d) in dx.chunks_exact_mut(c).enumerate() {
                    let n = i / hw;
                    for (dv, gv) in d.iter_mut().zip(&g[n * c..(n + 1) * c]) {
                        *dv = gv / hw as f32;
                    }
                }
                Ok(vec![Some(Tensor::from_vec(&s, dx))])
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::gradcheck::{check_gradients, random_tensor};

    #[test]
    fn gradient() {
        let x = random_tensor(&[3, 4, 5, 6], 1);
        check_gradients(&[x], |t, v| t.global_avg_pool(&v[0]));
    }
}
