using TorchSharp;
using static TorchSharp.torch;

namespace MechInterp.Native;

/// <summary>Softmax over the last dimension by the native kernel, with its native backward.</summary>
internal sealed class SoftmaxFunction : autograd.SingleTensorFunction<SoftmaxFunction>
{
    public override string Name => "MechInterpNativeSoftmax";

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        var y = NativeTensors.SoftmaxRows(x);
        ctx.save_for_backward([y]);
        return y;
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad)
    {
        var y = ctx.get_saved_variables()[0];
        return [NativeTensors.SoftmaxRowsBackward(y, grad)];
    }
}

/// <summary>Tensor-level wrappers: validate dtype/device, make contiguous, call the kernel.</summary>
internal static unsafe class NativeTensors
{
    public static Tensor SoftmaxRows(Tensor x)
    {
        RequireFloat32Cpu(x, "x");
        if (x.dim() == 0) throw new ArgumentException("softmax needs at least one dimension, got a scalar tensor");
        using var xc = x.contiguous();
        var y = empty_like(xc);
        long cols = x.shape[^1];
        long rows = cols == 0 ? 0 : xc.numel() / cols;
        if (rows == 0) return y;
        Ensure.Ok(NativeMethods.mi_softmax_rows_f32(Ptr(xc), Ptr(y), rows, cols),
                  nameof(NativeMethods.mi_softmax_rows_f32));
        return y;
    }

    public static Tensor SoftmaxRowsBackward(Tensor y, Tensor dy)
    {
        RequireFloat32Cpu(dy, "grad");
        using var yc = y.contiguous();
        using var dyc = dy.contiguous();
        var dx = empty_like(yc);
        long cols = y.shape[^1];
        long rows = cols == 0 ? 0 : yc.numel() / cols;
        if (rows == 0) return dx;
        Ensure.Ok(NativeMethods.mi_softmax_rows_backward_f32(Ptr(yc), Ptr(dyc), Ptr(dx), rows, cols),
                  nameof(NativeMethods.mi_softmax_rows_backward_f32));
        return dx;
    }

    /// <summary>Bytes per stream call: a span holds at most 2 GiB, and a tensor may hold more.</summary>
    internal static int ChunkBytes = 1 << 30;

    /// <summary>Writes the raw bytes of a contiguous CPU tensor (any dtype, any size) to <paramref name="stream"/>.</summary>
    public static void WriteBytes(Tensor t, Stream stream)
    {
        byte* data = Data(t, out long length);
        for (long done = 0; done < length;)
        {
            int n = (int)Math.Min(ChunkBytes, length - done);
            stream.Write(new ReadOnlySpan<byte>(data + done, n));
            done += n;
        }
    }

    /// <summary>Fills a contiguous CPU tensor (any dtype, any size) with exactly its byte count from <paramref name="stream"/>.</summary>
    public static void ReadBytes(Stream stream, Tensor t)
    {
        byte* data = Data(t, out long length);
        for (long done = 0; done < length;)
        {
            int n = (int)Math.Min(ChunkBytes, length - done);
            stream.ReadExactly(new Span<byte>(data + done, n));
            done += n;
        }
    }

    private static byte* Data(Tensor t, out long length)
    {
        if (!t.is_contiguous()) throw new ArgumentException("raw tensor bytes need a contiguous tensor");
        if (t.device_type != DeviceType.CPU) throw new ArgumentException($"raw tensor bytes need a CPU tensor, got {t.device}");
        length = checked(t.numel() * t.ElementSize);
        return length == 0 ? null : (byte*)NativeMethods.THSTensor_data(t.Handle);
    }

    /// <summary>The float data of a contiguous float32 CPU tensor.</summary>
    public static float* Ptr(Tensor t) => (float*)NativeMethods.THSTensor_data(t.Handle);

    /// <summary>The data of a contiguous int64 CPU tensor.</summary>
    public static long* LongPtr(Tensor t)
    {
        if (t.dtype != ScalarType.Int64) throw new ArgumentException($"expected an int64 tensor, got {t.dtype}");
        return (long*)NativeMethods.THSTensor_data(t.Handle);
    }

    /// <summary>The data of a contiguous bool CPU tensor (one byte per element).</summary>
    public static byte* BytePtr(Tensor t)
    {
        if (t.dtype != ScalarType.Bool) throw new ArgumentException($"expected a bool tensor, got {t.dtype}");
        return (byte*)NativeMethods.THSTensor_data(t.Handle);
    }

    public static void RequireFloat32Cpu(Tensor t, string name)
    {
        if (t.dtype != ScalarType.Float32)
            throw new ArgumentException($"{name} must be float32 for the native kernels, got {t.dtype}");
        if (t.device_type != DeviceType.CPU)
            throw new ArgumentException($"{name} must be on the CPU for the native kernels, got {t.device}");
    }
}
