using MechInterp.Kernels;
using MechInterp.Native;
using static TorchSharp.torch;

namespace MechInterp.Tests;

public unsafe class NativeInteropTests
{
    public NativeInteropTests() =>
        Assert.True(NativeKernels.IsAvailable, $"the native library must be built for these tests: {NativeKernels.UnavailableReason}");

    [Fact]
    public void NonZeroStatusBecomesAnExceptionWithTheNativeMessage()
    {
        var e = Assert.Throws<NativeException>(() => CallSoftmax(nullX: true, 1, 1));
        Assert.Equal(1, e.Status);
        Assert.Equal("x is a null pointer", e.NativeMessage);
        Assert.Contains("mi_softmax_rows_f32 failed with status 1 (null pointer): x is a null pointer", e.Message);
    }

    [Theory]
    [InlineData(0L, 4L, 2, "rows must be positive, got 0")]
    [InlineData(4L, -1L, 2, "cols must be positive, got -1")]
    [InlineData(1L << 40, 1L << 40, 3, "overflows int64")]
    public void InvalidSizesReturnAnErrorInsteadOfCrashing(long rows, long cols, int status, string message)
    {
        var e = Assert.Throws<NativeException>(() => CallSoftmax(nullX: false, rows, cols));
        Assert.Equal(status, e.Status);
        Assert.Contains(message, e.NativeMessage);
    }

    private static void CallSoftmax(bool nullX, long rows, long cols)
    {
        float buffer = 0;
        Ensure.Ok(NativeMethods.mi_softmax_rows_f32(nullX ? null : &buffer, &buffer, rows, cols), "mi_softmax_rows_f32");
    }

    [Fact]
    public void AbiVersionMatches() => Assert.Equal(NativeMethods.AbiVersion, NativeMethods.mi_version());

    [Theory]
    [InlineData(new long[] { 3, 5 })]
    [InlineData(new long[] { 2, 4, 130 })]
    [InlineData(new long[] { 1 })]
    public void NativeSoftmaxEqualsManagedForwardAndBackward(long[] shape)
    {
        using var scope = NewDisposeScope();
        manual_seed(7);
        var x1 = randn(shape).mul(3).requires_grad_();
        var x2 = x1.detach().clone().requires_grad_();
        var w = randn(shape);

        var yNative = Kernel.SoftmaxLastDim(x1, KernelBackend.Native);
        var yManaged = Kernel.SoftmaxLastDim(x2, KernelBackend.Managed);
        Assert.True(yNative.allclose(yManaged, rtol: 1e-5, atol: 1e-6));

        yNative.mul(w).sum().backward();
        yManaged.mul(w).sum().backward();
        Assert.True(x1.grad!.allclose(x2.grad!, rtol: 1e-4, atol: 1e-6));
    }

    [Fact]
    public void NativeSoftmaxOfANonContiguousViewIsCorrect()
    {
        using var scope = NewDisposeScope();
        var x = randn(6, 4).t();   // [4, 6], not contiguous
        Assert.True(Kernel.SoftmaxLastDim(x, KernelBackend.Native).allclose(x.softmax(-1), atol: 1e-6));
    }

    [Fact]
    public void NativeKernelsRejectWrongDtypeByName()
    {
        using var x = ones(new long[] { 2, 2 }, dtype: ScalarType.Float64);
        var e = Assert.Throws<ArgumentException>(() => Kernel.SoftmaxLastDim(x, KernelBackend.Native));
        Assert.Contains("x must be float32", e.Message);
        Assert.Contains("Float64", e.Message);
    }
}
