using MechInterp.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace MechInterp.Native;

/// <summary>Native top-k routing: indices, gates, counts and capacity drops in one pass over the logits.</summary>
internal static class NativeRouting
{
    public static ExpertRouting Route(Tensor logits, int k, RouterGating gating, long capacity)
    {
        NativeTensors.RequireFloat32Cpu(logits, "router logits");
        var outputs = RouteFunction.apply(logits, (long)k, (int)gating, capacity);
        Tensor gates = outputs[0], index = outputs[1], counts = outputs[2], kept = outputs[3];
        return new ExpertRouting(index, gates, counts, kept, kept.logical_not().nonzero());   // dropped: [n, 2] (token, slot)
    }
}

/// <summary>Outputs gates (differentiable in the logits), expert index, counts and kept (not differentiable).</summary>
internal sealed unsafe class RouteFunction : autograd.MultiTensorFunction<RouteFunction>
{
    public override string Name => "MechInterpNativeRoute";

    public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var logits = ((Tensor)vars[0]).contiguous();
        long k = (long)vars[1], capacity = (long)vars[3];
        int gating = (int)vars[2];
        long tokens = logits.shape[0], experts = logits.shape[1];
        var index = empty(tokens, k, dtype: ScalarType.Int64);    // [tokens, k]
        var gates = empty(tokens, k);                              // [tokens, k]
        var counts = empty(experts, dtype: ScalarType.Int64);     // [experts]
        var kept = empty(tokens, k, dtype: ScalarType.Bool);      // [tokens, k]
        long dropped = 0;
        Ensure.Ok(NativeMethods.mi_moe_route_f32(NativeTensors.Ptr(logits), tokens, experts, k, gating, capacity,
                      NativeTensors.LongPtr(index), NativeTensors.Ptr(gates), NativeTensors.LongPtr(counts),
                      NativeTensors.BytePtr(kept), &dropped), nameof(NativeMethods.mi_moe_route_f32));
        ctx.save_data("gating", gating);
        ctx.mark_non_differentiable([index, counts, kept]);
        ctx.save_for_backward([logits, index, kept]);
        return [gates, index, counts, kept];
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grads)
    {
        var saved = ctx.get_saved_variables();
        Tensor logits = saved[0], index = saved[1], kept = saved[2];
        long tokens = logits.shape[0], experts = logits.shape[1], k = index.shape[1];
        using var dGates = grads[0].contiguous();
        var dLogits = empty_like(logits);
        Ensure.Ok(NativeMethods.mi_moe_route_backward_f32(NativeTensors.Ptr(logits), NativeTensors.LongPtr(index),
                      NativeTensors.BytePtr(kept), NativeTensors.Ptr(dGates), tokens, experts, k, (int)ctx.get_data("gating"),
                      NativeTensors.Ptr(dLogits)), nameof(NativeMethods.mi_moe_route_backward_f32));
        return [dLogits, null!, null!, null!];
    }
}
