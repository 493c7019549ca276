"""Coupon: the transaction processor of an electronic goods-coupon programme."""
