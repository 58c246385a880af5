using MechInterp.Hooks;
using MechInterp.Kernels;
using MechInterp.Model;
using static TorchSharp.torch;

namespace MechInterp.Tests;

/// <summary>Hooks and kernel calls that used to abort the process or overflow the stack now raise .NET exceptions.</summary>
public class HostileHookTests
{
    public static TheoryData<ScalarType> OtherDtypes => new() { ScalarType.Float64, ScalarType.Int64 };

    [Theory]
    [MemberData(nameof(OtherDtypes))]
    public void AHookReturningAnotherDtypeIsNamedAtEveryHookPoint(ScalarType dtype)
    {
        // hook_pattern with float64 reached TorchSharp's matmul, whose c10::Error escaped as SIGABRT.
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny(experts: 4) with { use_attn_result = true });
        var tokens = ModelTests.Tokens(2, 5, 11, 4);
        var names = model.Hooks.Points.Keys.ToList();
        Assert.Contains(HookNames.Pattern(0), names);
        foreach (string name in names)
        {
            using var inner = NewDisposeScope();
            var e = Assert.Throws<InvalidOperationException>(() =>
                model.RunWithHooks(tokens, new Hook(name, (a, _) => a.to_type(a.dtype == dtype ? ScalarType.Float32 : dtype))));
            Assert.Contains($"hook on '{name}' returned dtype", e.Message);
        }
        Assert.DoesNotContain(model.Hooks.Points.Values, p => p.IsActive);
        Assert.Equal(new long[] { 2, 5, 11 }, model.Forward(tokens).shape);
    }

    [Fact]
    public void AHookThatRunsItsOwnModelIsRejectedNotAStackOverflow()
    {
        using var scope = NewDisposeScope();
        using var model = new HookedTransformer(ModelTests.Tiny());
        var tokens = ModelTests.Tokens(1, 5, 11, 4);
        var e = Assert.Throws<InvalidOperationException>(() =>
            model.RunWithHooks(tokens, new Hook(HookNames.ResidPre(1), (a, _) => { model.Forward(tokens); return a; })));
        Assert.Contains("forward was called again while it runs, from the hook on 'blocks.1.hook_resid_pre'", e.Message);
        // The model is usable afterwards, and a hook may still run a different model.
        using var other = new HookedTransformer(ModelTests.Tiny() with { seed = 9 });
        var logits = model.RunWithHooks(tokens, new Hook(HookNames.ResidPre(1), (a, _) => { other.Forward(tokens); return a; }));
        Assert.True(logits.equal(model.Forward(tokens)).all().item<bool>());
    }

    [Theory]
    [InlineData(KernelBackend.Native)]
    [InlineData(KernelBackend.Managed)]
    public void AttentionOperandsOfMixedDtypesAreAnArgumentError(KernelBackend backend)
    {
        using var scope = NewDisposeScope();
        var q = randn(1, 2, 4, 8, dtype: ScalarType.Float64);
        var k = randn(1, 2, 4, 8);
        var e = Assert.Throws<ArgumentException>(() => Kernel.Attention(q, k, k, causal: true, returnPattern: true, backend: backend));
        Assert.Contains("attention: k is Float32 but q is Float64", e.Message);
    }

    [Theory]
    [InlineData(KernelBackend.Native)]
    [InlineData(KernelBackend.Managed)]
    public void ExpertWeightsOfAnotherDtypeAreAnArgumentError(KernelBackend backend)
    {
        using var scope = NewDisposeScope();
        var x = randn(3, 4);
        var index = zeros(new long[] { 3, 1 }, dtype: ScalarType.Int64);
        var gates = ones(3, 1);
        var e = Assert.Throws<ArgumentException>(() => Kernel.ExpertMlp(x, index, gates, randn(new long[] { 2, 4, 6 }, dtype: ScalarType.Float64),
            zeros(2, 6), randn(2, 6, 4), zeros(2, 4), t => t.relu(), backend));
        Assert.Contains("expert MLP: W_in is Float64 but x is Float32", e.Message);
    }
}
