using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>The activation functions TransformerLens names in act_fn.</summary>
public static class Activations
{
    public static Func<Tensor, Tensor> Get(string actFn) => actFn switch
    {
        "relu" => x => nn.functional.relu(x),
        "gelu" => x => nn.functional.gelu(x),
        // GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        "gelu_new" => x => x.mul(0.5).mul(x.add(x.pow(3).mul(0.044715)).mul(Math.Sqrt(2.0 / Math.PI)).tanh().add(1.0)),
        "silu" => x => nn.functional.silu(x),
        _ => throw new ArgumentException($"act_fn must be relu|gelu|gelu_new|silu, got '{actFn}'"),
    };
}
