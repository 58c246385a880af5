using MechInterp.Hooks;
using MechInterp.Kernels;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>
/// A mixture-of-experts MLP: a linear router picks each token's top-k experts; gates are their
/// softmax probabilities (not renormalized, as Switch/GShard, so the router learns through them).
/// Hooks on the router logits, gates and expert index can read or replace routing.
/// </summary>
public sealed class Moe : nn.Module<Tensor, Tensor>
{
    private readonly DecoderConfig cfg;
    private readonly Func<Tensor, Tensor> act;
    public Parameter W_gate;   // [d_model, n_experts]
    public Parameter W_in;     // [n_experts, d_model, d_mlp]
    public Parameter b_in;     // [n_experts, d_mlp]
    public Parameter W_out;    // [n_experts, d_mlp, d_model]
    public Parameter b_out;    // [n_experts, d_model]
    public readonly HookPoint hook_router_logits, hook_gates, hook_expert_index;

    /// <summary>The load-balancing (and z-) loss of the last forward pass, already scaled by its coefficients.</summary>
    public Tensor? LastAuxLoss { get; private set; }

    /// <summary>Kept pairs per expert, dropped pairs and the capacity of the last forward pass.</summary>
    public RoutingStats? LastRouting { get; private set; }

    internal Moe(string prefix, DecoderConfig cfg, Init init, HookRegistry hooks) : base("mlp")
    {
        this.cfg = cfg;
        act = Activations.Get(cfg.act_fn);
        int e = cfg.n_experts, d = cfg.d_model, f = cfg.DMlp;
        W_gate = init.Normal(d, e);
        W_in = init.Normal(e, d, f);
        b_in = Init.Zeros(e, f);
        W_out = init.Normal(e, f, d);
        b_out = Init.Zeros(e, d);
        hook_router_logits = hooks.Add($"{prefix}.hook_router_logits");
        hook_gates = hooks.Add($"{prefix}.hook_gates");
        hook_expert_index = hooks.Add($"{prefix}.hook_expert_index");
        RegisterComponents();
    }

    /// <summary>x [batch, pos, d_model] → [batch, pos, d_model]</summary>
    public override Tensor forward(Tensor x)
    {
        long batch = x.shape[0], pos = x.shape[1], d = x.shape[2];
        int k = cfg.experts_per_token, experts = cfg.n_experts;
        var logits = hook_router_logits.Run(x.matmul(W_gate));   // [batch, pos, n_experts]
        var probs = logits.softmax(-1);                           // [batch, pos, n_experts]
        var (top, topIndex) = probs.topk(k, dim: -1);             // [batch, pos, k] each
        var gates = hook_gates.Run(top);
        var index = hook_expert_index.Run(topIndex);              // a replacing hook forces the routing

        long capacity = Router.Capacity(cfg.expert_capacity_factor, batch * pos, k, experts);
        var routed = Router.LimitCapacity(index.reshape(-1, k), gates.reshape(-1, k), experts, capacity);   // [batch * pos, k]
        LastRouting = routed.Stats;
        var output = Kernel.ExpertMlp(x.reshape(-1, d), index.reshape(-1, k), routed.Gates,
                                      W_in, b_in, W_out, b_out, act);   // [batch * pos, d_model]
        routed.Kept.Dispose();
        LastAuxLoss = AuxLoss(logits, probs, index, experts, k);
        return output.view(batch, pos, d);
    }

    /// <summary>
    /// Every expert's output on every token, ungated: x [tokens, d_model] (the block's normalized input,
    /// blocks.{i}.ln2.hook_normalized) → [n_experts, tokens, d_model]. For analysis: the layer's output
    /// is the gate-weighted sum of the rows its routing picks.
    /// </summary>
    public Tensor ExpertOutputs(Tensor x)
    {
        if (x.dim() != 2 || x.shape[1] != cfg.d_model)
            throw new ArgumentException($"x must be [tokens, d_model = {cfg.d_model}], got [{string.Join(", ", x.shape)}]");
        var hidden = act(x.unsqueeze(0).matmul(W_in).add(b_in.unsqueeze(1)));   // [n_experts, tokens, d_mlp]
        return hidden.matmul(W_out).add(b_out.unsqueeze(1));                   // [n_experts, tokens, d_model]
    }

    /// <summary>Switch Transformer balance loss α·E·Σ_e f_e·P_e (f_e: share of routed slots, P_e: mean router probability), plus z-loss.</summary>
    private Tensor AuxLoss(Tensor logits, Tensor probs, Tensor index, int experts, int k)
    {
        using var counts = nn.functional.one_hot(index.reshape(-1), experts).to(probs.dtype).sum(0L);   // [n_experts] (0L: a literal 0 would bind to sum(ScalarType))
        var fraction = counts.div(index.numel());                                                       // [n_experts]
        var meanProb = probs.reshape(-1, experts).mean([0L]);                                           // [n_experts]
        var loss = fraction.mul(meanProb).sum().mul(cfg.router_aux_loss_coef * experts);
        if (cfg.router_z_loss_coef > 0)
            loss = loss.add(logits.logsumexp(-1).pow(2).mean().mul(cfg.router_z_loss_coef));
        return loss;
    }
}
