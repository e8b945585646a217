"""The retina-exporter operator side: Kubernetes plumbing shared by the agent's ``kubernetes`` source and the
operator (named ``retina_operator`` because a top-level ``operator`` package would shadow the standard library).

* :mod:`retina_operator.kube`: client construction and a list+watch informer over the ``kubernetes`` client.
"""
