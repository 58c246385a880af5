using TorchSharp;
using static TorchSharp.torch;

namespace MechInterp.Hooks;

/// <summary>
/// One call's backward hooks: whether the call has ended (a graph kept past it no longer runs them) and the first
/// exception a backward hook threw, rethrown by the call once the backward pass returns.
/// </summary>
internal sealed class BackwardRun
{
    public bool Ended;
    public Exception? Error;
}

/// <summary>
/// The identity at a hook point whose backward runs the point's backward hooks: TorchSharp has no tensor
/// backward hooks (PyTorch's register_hook), so TransformerLens's dir="bwd" is this autograd function.
/// </summary>
internal sealed class BackwardHookFunction : autograd.SingleTensorFunction<BackwardHookFunction>
{
    public override string Name => "MechInterpBackwardHook";

    /// <summary>x unchanged in value; its gradient passes through the hooks. Integer activations have no gradient: unchanged.</summary>
    public static Tensor Wrap(Tensor x, HookPoint point, (HookFn, BackwardRun)[] attached)
    {
        if (!x.is_floating_point() || !is_grad_enabled()) return x;
        // A model with frozen parameters still has gradients with respect to its activations.
        var input = x.requires_grad ? x : x.detach().requires_grad_(true);
        return apply(input, new Attached(point, attached));
    }

    private sealed record Attached(HookPoint Point, (HookFn, BackwardRun)[] Hooks);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        ctx.save_data("attached", vars[1]);
        return ((Tensor)vars[0]).alias();
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad)
    {
        var a = (Attached)ctx.get_data("attached");
        return [a.Point.RunBackward(grad, a.Hooks), null!];
    }
}
