using MechInterp.Hooks;
using MechInterp.Kernels;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>
/// A mixture-of-experts MLP: a linear router gives every token a weight per expert (softmax over all experts),
/// its top-k experts run, and their outputs are summed weighted by the chosen weights, renormalized over the k
/// when cfg.norm_topk_prob is set (Mixtral) and not by default (Switch / GShard: the router learns through them;
/// a renormalized top-1 gate would always be 1). Hooks follow TransformerLens's Mixtral: hook_router_logits,
/// hook_expert_weights (the softmax before top-k) and hook_expert_indices (the chosen experts); replacing the
/// weights or the indices changes the routing, and <see cref="Kernel.Route"/> applies the capacity to whatever
/// was chosen. In a batched model, instance i's expert e is expert i·n_experts + e of one grouped dispatch, so
/// every instance's tokens meet only its own experts and the capacity of each is what it would be alone.
/// </summary>
public sealed class Moe : nn.Module<Tensor, Tensor>
{
    private readonly DecoderConfig cfg;
    private readonly bool batched;
    private readonly Func<Tensor, Tensor> act;
    public Parameter W_gate;   // [d_model, n_experts]
    public Parameter W_in;     // [n_experts, d_model, d_mlp]
    public Parameter b_in;     // [n_experts, d_mlp]
    public Parameter W_out;    // [n_experts, d_mlp, d_model]
    public Parameter b_out;    // [n_experts, d_model]
    public readonly HookPoint hook_router_logits, hook_expert_weights, hook_expert_indices;

    /// <summary>
    /// The load-balancing (and z-) loss of the last forward pass, already scaled by its coefficients:
    /// a scalar, or one per instance [instance] in a batched model.
    /// </summary>
    public Tensor? LastAuxLoss { get; private set; }

    /// <summary>
    /// The routing of the last forward pass, one group per instance: Counts (kept pairs per expert, instance-major),
    /// Dropped and Capacity as numbers; its tensors belong to that pass's dispose scope.
    /// </summary>
    public ExpertRouting? LastRouting { get; private set; }

    internal Moe(string prefix, DecoderConfig cfg, Init init, HookRegistry hooks) : base("mlp")
    {
        this.cfg = cfg;
        batched = init.Batched;
        act = Activations.Get(cfg.act_fn);
        int e = cfg.n_experts, d = cfg.d_model, f = cfg.DMlp;
        W_gate = init.Normal(d, e);
        W_in = init.Normal(e, d, f);
        b_in = init.Zeros(e, f);
        W_out = init.Normal(e, f, d);
        b_out = init.Zeros(e, d);
        hook_router_logits = hooks.Add($"{prefix}.hook_router_logits");
        hook_expert_weights = hooks.Add($"{prefix}.hook_expert_weights");
        hook_expert_indices = hooks.Add($"{prefix}.hook_expert_indices");
        RegisterComponents();
    }

    /// <summary>x [instance, batch, pos, d_model] → [instance, batch, pos, d_model]</summary>
    public override Tensor forward(Tensor x)
    {
        long instances = x.shape[0], batch = x.shape[1], pos = x.shape[2], d = x.shape[3];
        int k = cfg.experts_per_token, experts = cfg.n_experts;
        var logits = hook_router_logits.Run(Instanced.Linear(x, Instanced.Weight(W_gate, batched), null));   // [instance, batch, pos, n_experts]
        var weights = hook_expert_weights.Run(logits.softmax(-1));                                        // [instance, batch, pos, n_experts]
        // Chosen here only when a hook reads or replaces the choice; otherwise Route chooses (natively, in one pass).
        var chosen = hook_expert_indices.IsActive ? hook_expert_indices.Run(weights.topk(k, dim: -1).indexes) : null;   // [instance, batch, pos, k]
        long tokens = batch * pos;
        var routing = Kernel.Route(weights.reshape(instances, tokens, experts), k, cfg.norm_topk_prob,
                                   ExpertRouting.CapacityOf(cfg.expert_capacity_factor, tokens, k, experts),
                                   chosen?.reshape(instances, tokens, k));
        LastRouting = routing;
        var index = routing.ExpertIndex;                                                                   // [instance, tokens, k]
        var global = (batched ? index.add(arange(instances).mul(experts).view(instances, 1, 1)) : index).reshape(-1, k);   // [instance·tokens, k]
        long f = cfg.DMlp, all = instances * experts;
        var output = Kernel.ExpertMlp(x.reshape(-1, d), global, routing.Gates.reshape(-1, k),
                                      W_in.reshape(all, d, f), b_in.reshape(all, f), W_out.reshape(all, f, d), b_out.reshape(all, d), act);   // [instance·tokens, d_model]
        var aux = AuxLoss(logits, weights, index, experts);                                                // [instance]
        LastAuxLoss = batched ? aux : aux.squeeze(0);
        return output.view(instances, batch, pos, d);
    }

    /// <summary>
    /// Every expert's output on every token, ungated: x [tokens, d_model] (the block's normalized input,
    /// blocks.{i}.ln2.hook_normalized) → [n_experts, tokens, d_model]. For analysis: the layer's output
    /// is the gate-weighted sum of the rows its routing picks. Ordinary models only.
    /// </summary>
    public Tensor ExpertOutputs(Tensor x)
    {
        if (batched) throw new InvalidOperationException("ExpertOutputs reads one model's experts; take the instance out of the batched model first (HookedTransformer.Instance)");
        if (x.dim() != 2 || x.shape[1] != cfg.d_model)
            throw new ArgumentException($"x must be [tokens, d_model = {cfg.d_model}], got [{string.Join(", ", x.shape)}]");
        var hidden = act(x.unsqueeze(0).matmul(W_in).add(b_in.unsqueeze(1)));   // [n_experts, tokens, d_mlp]
        return hidden.matmul(W_out).add(b_out.unsqueeze(1));                   // [n_experts, tokens, d_model]
    }

    /// <summary>
    /// Switch Transformer balance loss α·E·Σ_e f_e·P_e (f_e: share of routed slots, P_e: mean router probability),
    /// plus z-loss, per instance → [instance].
    /// </summary>
    private Tensor AuxLoss(Tensor logits, Tensor weights, Tensor index, int experts)
    {
        long instances = index.shape[0];
        using var counts = nn.functional.one_hot(index.reshape(instances, -1), experts).to(weights.dtype).sum(1L);   // [instance, n_experts]
        var fraction = counts.div(index.numel() / instances);                                                       // [instance, n_experts]
        var meanProb = weights.reshape(instances, -1, experts).mean([1L]);                                          // [instance, n_experts]
        var loss = fraction.mul(meanProb).sum(-1).mul(cfg.router_aux_loss_coef * experts);                       // [instance]
        if (cfg.router_z_loss_coef > 0)
            loss = loss.add(logits.logsumexp(-1).pow(2).reshape(instances, -1).mean([1L]).mul(cfg.router_z_loss_coef));
        return loss;
    }
}
