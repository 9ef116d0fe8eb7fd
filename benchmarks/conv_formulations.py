"""Why mnist_cnn trains slower in XLA:CPU than in PyTorch: its two convolutions, timed alone.

Three formulations of the same VALID conv (lax.conv_general_dilated; im2col from K*K
shifted slices + one matmul; a sum of K*K per-tap matmuls), forward, backward to (x, w)
and to w only, in ms, batch 128, with the max difference from lax. None wins overall
(2-core x86-64, jax 0.10.2, Nov 2026: conv1 lax 3.1/9.9/2.9, im2col 2.3/4.6/2.6, tap-sum
0.7/7.6/4.4; conv2 lax 2.3/7.0/4.5, im2col 2.5/6.5/3.4, tap-sum 3.8/11.1/4.0), so
layers.Conv2D keeps lax. Run: python benchmarks/conv_formulations.py
"""
import time, jax, jax.numpy as jnp, numpy as np
from jax import lax
def bench(f, *a, n=50):
  jax.block_until_ready(f(*a))
  t=time.perf_counter()
  for _ in range(n): r=f(*a)
  jax.block_until_ready(r)
  return (time.perf_counter()-t)/n*1e3
rng=np.random.RandomState(0)
def slice_patches(x,K):
  N,H,W,C=x.shape; Ho,Wo=H-K+1,W-K+1
  cols=[x[:,i:i+Ho,j:j+Wo,:] for i in range(K) for j in range(K)]
  return jnp.concatenate(cols,axis=-1)  # (N,Ho,Wo,K*K*C) ordering (i,j,c)
def conv_mm(x,w):
  K,_,C,O=w.shape
  p=slice_patches(x,K)
  return (p.reshape(-1,K*K*C) @ w.reshape(K*K*C,O)).reshape(p.shape[:3]+(O,))
def conv_sum(x,w):  # sum over taps of small matmuls
  K,_,C,O=w.shape; N,H,W,_=x.shape; Ho,Wo=H-K+1,W-K+1
  acc=0
  for i in range(K):
    for j in range(K):
      acc=acc+jnp.einsum("nhwc,co->nhwo",x[:,i:i+Ho,j:j+Wo,:],w[i,j])
  return acc
conv=lambda x,w: lax.conv_general_dilated(x,w,(1,1),"VALID",dimension_numbers=("NHWC","HWIO","NHWC"))
def main():
  for (N,H,C,O,K) in [(128,28,1,16,5),(128,12,16,24,5)]:
    x=jnp.asarray(rng.randn(N,H,H,C).astype(np.float32)); w=jnp.asarray(rng.randn(K,K,C,O).astype(np.float32))
    y=conv(x,w); g=jnp.asarray(rng.randn(*y.shape).astype(np.float32))
    for name,f in [("lax",conv),("slice-im2col",conv_mm),("tap-sum",conv_sum)]:
      fwd=jax.jit(f)
      both=jax.jit(lambda x,w,g,f=f: jax.vjp(f,x,w)[1](g))
      wonly=jax.jit(lambda x,w,g,f=f: jax.vjp(lambda w: f(x,w),w)[1](g))
      err=float(jnp.max(jnp.abs(fwd(x,w)-y)))
      print((N,H,C,O,K),name,"fwd %.2f  bwd(x,w) %.2f  bwd(w) %.2f  err %.1e"%(bench(fwd,x,w),bench(both,x,w,g),bench(wonly,x,w,g),err))
if __name__ == "__main__":
  main()
