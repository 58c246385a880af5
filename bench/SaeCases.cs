using MechInterp.Analysis.Dictionary;
using Microsoft.FSharp.Core;
using static TorchSharp.torch;

namespace MechInterp.Bench;

/// <summary>
/// SAE training: our TopK trainer (Dictionary/SaeTraining) against a separate, plainly written TorchSharp TopK SAE
/// with the same steps (Adam, unit-norm decoder rows with the parallel gradient removed, gradient clipping). Both
/// train 10 steps of 1,024 activations of d_in 256 into 1,024 latents, k = 32 (a typical TopK sparsity); the row's
/// times are per 10 steps, and activations per second are printed beside them.
/// </summary>
internal static class SaeCases
{
    const int DIn = 256, DSae = 1024, K = 32, Batch = 1024, Steps = 10;

    public static IEnumerable<BenchResult> Run()
    {
        using var scope = NewDisposeScope();
        manual_seed(5);
        var data = randn(16 * Batch, DIn);                       // [rows, d_in], reused so both arms see the same inputs
        int cursor = 0;
        Tensor Next(int n)
        {
            var start = (cursor++ * n) % (data.shape[0] - n);
            return data.narrow(0, start, n).clone();
        }
        var settings = new SaeTraining.TrainSettings(Steps, Batch, 1e-3, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1_000_000, 0, 1.0 / 32.0, 0L, Steps);
        var config = SaeConfigModule.create(Architecture.TopK, DIn, DSae, K, "x", "bench");
        var log = FuncConvert.FromAction<string>(_ => { });
        var next = FuncConvert.FromFunc<int, Tensor>(Next);
        var ms = Timing.Interleaved([
            () => { using var s = NewDisposeScope(); var t = SaeTraining.train(log, settings, config, next); ((IDisposable)t.Sae).Dispose(); },
            () => { using var s = NewDisposeScope(); PlainTopK(Next); },
        ], warmup: 1, repetitions: 5);
        Console.WriteLine($"SAE TopK training: ours {Steps * Batch / (ms.Median(0) / 1000):N0} activations/s, plain TorchSharp {Steps * Batch / (ms.Median(1) / 1000):N0} activations/s");
        yield return ms.Compare($"SAE TopK train {Steps} steps d{DIn}->{DSae} k{K} b{Batch}", 0, "plain TorchSharp", 1);
    }

    /// <summary>The same architecture and optimizer written out directly, as a user would without the library.</summary>
    static void PlainTopK(Func<int, Tensor> next)
    {
        var rows = randn(DSae, DIn);
        var wDec = new TorchSharp.Modules.Parameter(rows.div(rows.norm(1, true)));   // [d_sae, d_in], unit rows
        var wEnc = new TorchSharp.Modules.Parameter(wDec.detach().t().clone());      // [d_in, d_sae]
        var bEnc = new TorchSharp.Modules.Parameter(zeros(DSae));
        var bDec = new TorchSharp.Modules.Parameter(zeros(DIn));
        var parameters = new[] { wEnc, bEnc, wDec, bDec };
        var optimizer = optim.Adam(parameters, lr: 1e-3);
        for (int step = 0; step < Steps; step++)
        {
            using var s = NewDisposeScope();
            var x = next(Batch);                                           // [batch, d_in]
            var pre = x.sub(bDec).matmul(wEnc).add(bEnc);                 // [batch, d_sae]
            var (values, indexes) = pre.topk(K, dim: -1);
            var acts = zeros_like(pre).scatter(-1, indexes, values.relu());
            var xHat = acts.matmul(wDec).add(bDec);
            var loss = xHat.sub(x).square().sum(-1).mean();
            optimizer.zero_grad();
            loss.backward();
            using (no_grad())
            {
                var unit = wDec.div(wDec.norm(1, true));
                wDec.grad!.sub_(wDec.grad!.mul(unit).sum(1, true).mul(unit));
            }
            nn.utils.clip_grad_norm_(parameters, 1.0);
            optimizer.step();
            using (no_grad()) wDec.div_(wDec.norm(1, true));
        }
    }
}
