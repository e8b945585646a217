"""dropreason: packets the kernel drops, counted per kernel drop reason (skb:kfree_skb), with pod-level events."""
