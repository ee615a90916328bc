"""Timing of the methods added in the second session on W1 (batch 16): python bench/new_methods_timing.py"""
import sys, time
sys.path.insert(0, "bench")
import models as M, relprop as rp
net = M.w1_relprop(); x = M.w1_input()
pats = rp.fit_patterns(net, M.w1_input(batch=64, seed=99), batch_size=32)
t0=time.perf_counter(); rp.fit_patterns(net, M.w1_input(batch=64, seed=98), batch_size=32); fit=time.perf_counter()-t0
cases = [("lrp.epsilon", {}), ("lrp.alpha_beta", {"alpha": 2.0, "beta": 1.0}), ("rap", {}),
         ("deeplift.rescale", {}), ("deeplift.reveal_cancel", {}), ("deeplift.reveal_cancel", {"conv_rule": "reveal_cancel"}),
         ("gradient", {}), ("patternnet", {"patterns": pats}), ("pattern_attribution", {"patterns": pats})]
print(f"W1 batch {x.shape}, fit_patterns 64 images: {fit:.2f} s")
for m, p in cases:
    rp.attribute(net, x[:2], m, **p)
    ts=[]
    for _ in range(3):
        t0=time.perf_counter(); rp.attribute(net, x, m, **p); ts.append(time.perf_counter()-t0)
    print(f"{m:24s} {str(p.get('conv_rule','')):14s} {min(ts)*1000:8.0f} ms  {x.shape[0]/min(ts):6.1f} img/s")
