using MechInterp.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace MechInterp.Native;

/// <summary>Native routing (native/src/route.hpp): top-k choice, gates and capacity in one pass over the weights.</summary>
internal static class NativeRouting
{
    /// <summary>weights [groups, tokens, experts]; given [groups, tokens, k] or null to choose the top k.</summary>
    public static ExpertRouting Route(Tensor weights, int k, bool renormalize, long capacity, Tensor? given)
    {
        NativeTensors.RequireFloat32Cpu(weights, "expert weights");
        var outputs = RouteFunction.apply(weights, new RouteArguments(k, renormalize, capacity, given));
        Tensor gates = outputs[0], index = outputs[1], kept = outputs[2], counts = outputs[3], dropped = outputs[4];
        var routing = new ExpertRouting(index, gates, kept, counts.data<long>().ToArray(), dropped.item<long>(), capacity);
        counts.Dispose();
        dropped.Dispose();
        return routing;
    }
}

/// <summary>The routing's settings, kept out of autograd's view (a given index is an input, not a differentiable one).</summary>
internal sealed record RouteArguments(int K, bool Renormalize, long Capacity, Tensor? Given);

/// <summary>Outputs gates (differentiable in the weights), expert index, kept, counts and the dropped count (not differentiable).</summary>
internal sealed unsafe class RouteFunction : autograd.MultiTensorFunction<RouteFunction>
{
    public override string Name => "MechInterpNativeRoute";

    public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var weights = ((Tensor)vars[0]).contiguous();
        var a = (RouteArguments)vars[1];
        long groups = weights.shape[0], tokens = weights.shape[1], experts = weights.shape[2], k = a.K;
        var index = a.Given is null ? empty(groups, tokens, k, dtype: ScalarType.Int64) : a.Given.contiguous().clone();   // [groups, tokens, k]
        var gates = empty(groups, tokens, k);                                  // [groups, tokens, k]
        var kept = empty(groups, tokens, k, dtype: ScalarType.Bool);           // [groups, tokens, k]
        var counts = empty(groups * experts, dtype: ScalarType.Int64);         // [groups · experts]
        long dropped = 0;
        Ensure.Ok(NativeMethods.mi_moe_route_f32(NativeTensors.Ptr(weights), groups, tokens, experts, k, a.Given is null ? 1 : 0,
                      a.Renormalize ? 1 : 0, a.Capacity, NativeTensors.LongPtr(index), NativeTensors.Ptr(gates),
                      NativeTensors.LongPtr(counts), NativeTensors.BytePtr(kept), &dropped), nameof(NativeMethods.mi_moe_route_f32));
        var droppedTensor = tensor(dropped);
        ctx.save_data("renormalize", a.Renormalize ? 1 : 0);
        ctx.mark_non_differentiable([index, kept, counts, droppedTensor]);
        ctx.save_for_backward([weights, index, kept]);
        return [gates, index, kept, counts, droppedTensor];
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grads)
    {
        var saved = ctx.get_saved_variables();
        Tensor weights = saved[0], index = saved[1], kept = saved[2];
        long rows = weights.shape[0] * weights.shape[1], experts = weights.shape[2], k = index.shape[2];
        using var dGates = grads[0].contiguous();
        var dWeights = empty_like(weights);
        Ensure.Ok(NativeMethods.mi_moe_route_backward_f32(NativeTensors.Ptr(weights), NativeTensors.LongPtr(index),
                      NativeTensors.BytePtr(kept), NativeTensors.Ptr(dGates), rows, experts, k, (int)ctx.get_data("renormalize"),
                      NativeTensors.Ptr(dWeights)), nameof(NativeMethods.mi_moe_route_backward_f32));
        return [dWeights, null!];
    }
}
