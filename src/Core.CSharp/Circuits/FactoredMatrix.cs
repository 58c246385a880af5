using static TorchSharp.torch;

namespace MechInterp.Circuits;

/// <summary>
/// A low-rank matrix kept as the product A B (TransformerLens's FactoredMatrix), A [m, r], B [r, n], in the
/// row-vector convention of the model (x A B). Eigenvalues come from B A [r, r], which has the nonzero
/// eigenvalues of A B, so a vocabulary-sized circuit never has to be diagonalized. Owns neither factor's storage
/// beyond the views it was given; dispose the tensors it returns.
/// </summary>
public sealed class FactoredMatrix
{
    public Tensor A { get; }
    public Tensor B { get; }

    public FactoredMatrix(Tensor a, Tensor b)
    {
        if (a.dim() != 2 || b.dim() != 2 || a.shape[1] != b.shape[0])
            throw new ArgumentException($"a factored matrix needs A [m, r] and B [r, n], got A [{string.Join(", ", a.shape)}] and B [{string.Join(", ", b.shape)}]");
        A = a;
        B = b;
    }

    /// <summary>[m, n]</summary>
    public long[] Shape => [A.shape[0], B.shape[1]];

    /// <summary>The product materialized, [m, n].</summary>
    public Tensor AB => A.matmul(B);

    /// <summary>B A [r, r]: its eigenvalues are A B's nonzero ones.</summary>
    public Tensor BA => B.matmul(A);

    /// <summary>(A B)ᵀ = Bᵀ Aᵀ, still factored.</summary>
    public FactoredMatrix T => new(B.t(), A.t());

    /// <summary>This matrix times another on the right, still factored: A (B C D).</summary>
    public FactoredMatrix Then(FactoredMatrix next) => new(A, B.matmul(next.A).matmul(next.B));

    /// <summary>Frobenius norm of A B, from the r × r Gram matrices: sqrt(tr(AᵀA · B Bᵀ)).</summary>
    public double Norm()
    {
        using var scope = NewDisposeScope();
        return Math.Sqrt(Math.Max(0, A.t().matmul(A).matmul(B.matmul(B.t())).trace().to_type(ScalarType.Float64).item<double>()));
    }

    /// <summary>The eigenvalues of A B (square only) that are not structurally zero: those of B A, complex, [r].</summary>
    public Tensor Eigenvalues()
    {
        if (Shape[0] != Shape[1]) throw new InvalidOperationException($"eigenvalues need a square matrix, this one is [{Shape[0]}, {Shape[1]}]");
        return linalg.eigvals(BA.to_type(ScalarType.Float64));
    }
}
