using MechInterp.Hooks;
using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.Bench;

/// <summary>
/// What the hook points cost when nothing is attached: the hooked model's forward against the same
/// model with every hook call short-circuited (as if compiled out). The target is at most 5%.
/// </summary>
internal static class HookedModelCases
{
    public static IEnumerable<BenchResult> Run()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var model = new HookedTransformer(new DecoderConfig
        {
            d_model = 128, n_layers = 2, n_heads = 4, d_vocab = 512, n_ctx = 128, seed = 0,
        });
        var tokens = randint(0, 512, [8, 128], dtype: ScalarType.Int64);
        var ms = Timing.Interleaved([
            () => { HookPoint.CompiledOut = false; using var l = model.forward(tokens); },
            () => { HookPoint.CompiledOut = true; using var l = model.forward(tokens); },
        ], repetitions: 21);
        HookPoint.CompiledOut = false;
        yield return ms.Compare("hooked forward, no hooks, B8 T128 d128 L2", 0, "hooks compiled out", 1);
    }
}
